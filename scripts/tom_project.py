"""Lay out a TOM Toolkit project that uses mmcross as a broker, the way TOM Toolkit's
``manage.py tom_setup`` does (its own templates settings.tmpl and urls.tmpl, its answers:
custom code app ``custom_code``, sidereal targets, no hints), without its questions.

Run with the python of a venv holding tomtoolkit and mmcross (``scripts/tom_env.sh`` prints
it), then migrate::

    python scripts/tom_project.py http://127.0.0.1:8080 mytom   # where `mmcross serve` runs
    cd mytom && python manage.py migrate

``settings.py`` gets ``tom_alerts`` in ``INSTALLED_APPS`` (no default app of TOM Toolkit 3),
``TOM_ALERT_CLASSES = ["mmcross.tom.MMCrossBroker"]`` and ``BROKERS["mmcross"]["url"]``.
"""

from __future__ import annotations

import argparse
import os

import django
from django.conf import settings
from django.core.management.utils import get_random_secret_key
from django.template.loader import get_template
from django.utils import timezone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mmcross_url", help="base URL of `mmcross serve`")
    parser.add_argument("directory", nargs="?", default=".", help="project folder (made)")
    args = parser.parse_args()
    settings.configure(INSTALLED_APPS=["tom_setup"], TEMPLATES=[
        {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}])
    django.setup()
    context = {"PROJECT_NAME": "tomproject", "CUSTOM_CODE_APP_NAME": "custom_code",
               "TARGET_TYPE": "SIDEREAL", "HINTS_ENABLED": False,
               "SECRET_KEY": get_random_secret_key(), "CREATE_DATE": timezone.now(),
               "DJANGO_VERSION": django.get_version()}
    os.makedirs(args.directory, exist_ok=True)
    os.chdir(args.directory)
    for folder in ("tomproject", "custom_code/management/commands", "data", "templates",
                   "static", "tmp"):
        os.makedirs(folder, exist_ok=True)
    for path in ("tomproject/__init__.py", "custom_code/__init__.py", "custom_code/models.py"):
        open(path, "w").close()  # noqa: SIM115 (an empty file)
    with open("tomproject/urls.py", "w") as f:
        f.write(get_template("tom_setup/urls.tmpl").render(context))
    with open("tomproject/settings.py", "w") as f:
        f.write(get_template("tom_setup/settings.tmpl").render(context))
        f.write("\n# mmcross as a broker (tom_alerts is no default app of TOM Toolkit 3)\n"
                "INSTALLED_APPS += ['tom_alerts']\n"
                "TOM_ALERT_CLASSES = ['mmcross.tom.MMCrossBroker']\n"
                f"BROKERS = {{'mmcross': {{'url': {args.mmcross_url!r}}}}}\n")
    with open("manage.py", "w") as f:
        f.write("import os\nimport sys\n\n"
                "from django.core.management import execute_from_command_line\n\n"
                "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tomproject.settings')\n"
                "execute_from_command_line(sys.argv)\n")


if __name__ == "__main__":
    main()
