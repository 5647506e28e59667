"""``python -m mmcross``: the command line (:mod:`mmcross.app.cli`)."""

from mmcross.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
