"""Training: ``gaheads train`` (``config`` flags, ``engine`` loop and its parts, ``cli`` the command).

``engine.train(config.parse_args(argv))`` runs one training; ``cli.main(argv)`` is the command.
The loop's parts: ``train_state``, ``checkpointing``, ``run_log``, ``step``, ``build``, ``output_folder``.
"""
