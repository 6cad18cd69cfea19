"""URLs of the example site (run it as ``../manage.py`` says)."""

from django.urls import path

from . import views

urlpatterns = [
    path("accounts/login/", views.login),
    path("inbox/", views.inbox),
]
