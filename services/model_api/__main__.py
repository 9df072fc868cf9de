import sys

from services.common.http.serve import serve
from services.common.settings import get_settings
from services.model_api.app import create_app
from services.model_api.modelstore import ModelFileError

settings = get_settings()
try:
    app = create_app(settings)
except ModelFileError as exc:
    sys.exit(f"model_api: {exc}")
serve(app, settings.HTTP_HOST, settings.MODEL_PORT)
