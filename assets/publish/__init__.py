"""Publishing hourly rollups to the control plane, exactly once (invariant 4)."""
