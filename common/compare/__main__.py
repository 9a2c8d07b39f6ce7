"""python -m common.compare (from the repo), or python path/to/common/compare (from any folder)."""
import os
import sys

if __package__ in (None, ""):  # run as a folder: the repo is not on the path yet
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from common.stopping import stop_while_starting  # noqa: E402
stop_while_starting(__name__)  # before scipy and matplotlib load: a Ctrl-C then exits quietly

from common.compare.cli import main  # noqa: E402

main()
