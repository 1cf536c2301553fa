import sys
from pathlib import Path

# the shared stream fixture's loader lives beside its data
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures" / "stream"))
