"""The run side of the engine, free of TensorFlow: what a run is on disk, its events,
how a worker is started, supervised and steered. Front ends import only this side
(and the config, presets, remedies and GPU modules beside it)."""
