"""Warm serving: each system's champion and index loaded once, answers in milliseconds.

``service.py``  what a system's serving side declares (:class:`Service`: the version it
                should serve now, how to load it, the operations it answers) and the shared
                request checks (empty / overlong queries, k out of range, unknown ids)
``live.py``     :class:`LiveService`: holds one loaded version and swaps in the next one
                (loaded in the background) when the registry moves, without a failed request
``media.py``    pin images and video keyframes, served only from the validated data
``app.py``      the FastAPI app (``mmpipe serve``): one route per operation of every service,
                the media, the explorer page under ``static/``; it never names a system

A system's services live in its own ``mmpipe/systems/<name>/serve.py`` and are registered
through its SPEC (``SystemSpec.service``); this package never imports a system.
"""
