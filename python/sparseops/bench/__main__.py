"""``python -m sparseops.bench --help``"""
import sys

from .cli import main

sys.exit(main())
