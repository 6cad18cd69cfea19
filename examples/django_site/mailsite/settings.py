"""Settings of the example site: no database, no apps, one view module.

Run the site with ``python manage.py runserver`` (WSGI) or
``uvicorn mailsite.asgi:application`` (ASGI), from ``examples/django_site``.

``MAILGUARD_DOS`` and ``MAILGUARD_LOGIN`` are this example's own settings:
the options ``asgi.py`` and ``wsgi.py`` pass to the filters.
"""

SECRET_KEY = "example-only-change-me"  # load yours from the environment
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ROOT_URLCONF = "mailsite.urls"
WSGI_APPLICATION = "mailsite.wsgi.application"  # what runserver serves
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []  # a real site keeps CsrfViewMiddleware and friends
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MAILGUARD_DOS = {"max_requests_per_sec": 20}
MAILGUARD_LOGIN = {
    "max_failed_logins": 5,
    "failure_interval": 300,
    "block_duration": 900,
    "login_paths": ["/accounts/login/"],
}
