"""A minimal Django site wrapped by mailguard (see ``../manage.py`` to run it)."""
