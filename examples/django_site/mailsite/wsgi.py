"""The site as a WSGI app, wrapped by mailguard.

Run it, after ``python manage.py migrate`` (from ``examples/django_site``)::

    python manage.py runserver 8000                    # serves this module
    gunicorn mailsite.wsgi:application -b 127.0.0.1:8000

With several gunicorn workers, give the filters ``store=RedisStore(...)`` so
they share their counts (see ``examples/redis_workers``).
"""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from mailguard.wsgi import DosFilter, InvalidLoginFilter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")

django_app = get_wsgi_application()
application = DosFilter(
    InvalidLoginFilter(django_app, **settings.MAILGUARD_LOGIN), **settings.MAILGUARD_DOS
)
