// placeholder until the spec module lands
