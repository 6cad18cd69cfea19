"""A minimal Django site (django.contrib.auth's LoginView) wrapped by mailguard.

Run it as ``../manage.py`` says: migrate, create a user, runserver.
"""
