import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the shared stream fixture's loader lives beside its data; engine_builders lives here
sys.path[:0] = [str(HERE.parents[1] / "fixtures" / "stream"), str(HERE)]
