"""Put the repo root and tests/ on sys.path (tests/ has no __init__.py, so pytest never imports the
pack's root __init__.py, which needs ComfyUI)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
