"""Neural network modules: the GPSToken tokenizer (encoder + decoder) and SiT generators."""
