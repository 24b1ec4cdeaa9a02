import sys

from unipose_sdk.cli import main

sys.exit(main())
