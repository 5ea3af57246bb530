"""Will it fit? Per-device memory and step-time prediction by compiling against fake devices."""
