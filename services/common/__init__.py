"""What every service needs once: settings, message schema, broker link and HTTP bits."""
