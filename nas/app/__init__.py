"""The only place that resolves names and knows every wing: the `nas` command line, run
configs, the pipeline that runs a config's stages into a run folder, its report, the demo and
the price command. Import its modules directly (`nas.app.pipeline`, `nas.app.cli`, ...)."""

__all__: list[str] = []
