from services.common.http.serve import serve
from services.common.settings import get_settings
from services.features_api.app import create_app

settings = get_settings()
serve(create_app(settings), settings.HTTP_HOST, settings.FEATURES_PORT)
