"""Django's command line for the example site.

Run it (from this directory, with mailguard and django installed)::

    python manage.py migrate                  # the users, in db.sqlite3 (or $MAILSITE_DB)
    python manage.py createsuperuser          # a user to log in as
    python manage.py runserver 8000

``runserver`` serves ``mailsite.wsgi.application``, the Django app wrapped
by mailguard, so the filters act there too.  For ASGI::

    uvicorn mailsite.asgi:application --port 8000
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
