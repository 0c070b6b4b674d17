"""``orq robot``: the reference robot. It speaks the robot protocol of DESIGN §10 over HTTP (``client.py``),
runs offered tasks with the executor's action catalogue while heartbeating their lease (``task.py``), and
keeps polling, reconnecting and draining on SIGTERM (``runner.py``). See docs/robots.md."""
