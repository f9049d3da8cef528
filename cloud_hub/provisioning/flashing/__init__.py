"""`edgepilot flash`: put the agent, its enrollment token and the first-boot files into a
Raspberry Pi OS (or Jetson) image's FAT boot partition, without root, mount or loop device."""
