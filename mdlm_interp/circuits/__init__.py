"""Circuits: prompt pairs between mask configurations, activation and attribution patching, head
ranking by attention to the masks, and ablation of heads (attention to the masks, or their output)."""
