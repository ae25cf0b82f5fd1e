"""vfw-core's own plugin module: declares the API it provides, like every plugin does."""

VFW_API = "1.0"
