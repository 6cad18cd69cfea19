"""Settings of the example site: django.contrib.auth's own login, on SQLite.

Run the site (from ``examples/django_site``)::

    python manage.py migrate
    python manage.py createsuperuser          # or any user of yours
    python manage.py runserver                # WSGI; or: uvicorn mailsite.asgi:application

The database is ``db.sqlite3`` here, or the file ``MAILSITE_DB`` names (the
tests point it at a temporary directory).

``MAILGUARD_DOS`` and ``MAILGUARD_LOGIN`` are this example's own settings:
the options ``asgi.py`` and ``wsgi.py`` pass to the filters.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("MAILSITE_SECRET_KEY", "example-only-change-me")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ROOT_URLCONF = "mailsite.urls"
WSGI_APPLICATION = "mailsite.wsgi.application"  # what runserver serves
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # tells InvalidLoginFilter how authenticate() went (X-Login-Result): see login_result.py
    "mailsite.login_result.LoginResultMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "mailsite" / "templates"],
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("MAILSITE_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/inbox/"
USE_TZ = True

MAILGUARD_DOS = {"max_requests_per_sec": 20}
MAILGUARD_LOGIN = {
    # django.contrib.auth's LoginView: a 200 re-render of the form is a failure, a
    # redirect a success, a CSRF 403 no login at all.  The preset's login_paths are
    # /accounts/login/ and /admin/login/; list yours (login_paths=[...]) if they differ.
    "preset": "django",
    "login_paths": ["/accounts/login/", "/admin/login/", "/api/login/"],
    "max_failed_logins": 5,
    "failure_interval": 300,
    "block_duration": 900,
}
