"""The site as an ASGI app, wrapped by mailguard.

Run it (from ``examples/django_site``, with mailguard, django and uvicorn),
after ``python manage.py migrate``::

    uvicorn mailsite.asgi:application --port 8000

DosFilter is outermost, so a flood is refused before Django builds a request;
InvalidLoginFilter (``preset="django"``, see ``settings.MAILGUARD_LOGIN``)
counts the wrong passwords Django's ``LoginView`` answers with its form again.
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
