"""The site as an ASGI app, wrapped by mailguard.

Run it (from ``examples/django_site``, with mailguard, django and uvicorn)::

    uvicorn mailsite.asgi:application --port 8000

DosFilter is outermost, so a flood is refused before Django builds a request.
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

from mailguard.asgi import DosFilter, InvalidLoginFilter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")

django_app = get_asgi_application()
application = DosFilter(
    InvalidLoginFilter(django_app, **settings.MAILGUARD_LOGIN), **settings.MAILGUARD_DOS
)
