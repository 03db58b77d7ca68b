"""The nftables object model (model), its one text renderer (render)."""
