"""Training: ``gaheads train`` (``config`` flags, ``engine`` loop, ``state`` checkpoints, ``outputs`` files).

``engine.train(config.parse_args(argv))`` runs one training; ``cli.main(argv)`` is the command.
"""
