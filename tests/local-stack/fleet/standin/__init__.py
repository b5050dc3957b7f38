"""The stand-in for AWS IoT's side of fleet provisioning on the local stack (see ../fleet.py)."""
