"""Declarative automation: which assets follow their inputs on their own.

The automation sensor (``default_automation_condition_sensor``) evaluates these; switch it
on in the UI (Automation → "default_automation_condition_sensor"). Cheap downstream assets
are eager: a new day partition of validated data flows on to frames, caption caches,
embeddings and the index by itself. Training assets have no condition here: the
retraining sensor and the weekly schedule decide when they run, so a new day never
retrains by itself. The evaluation and promotion gate follow a new model (and only a
new model: the daily data they also read does not trigger them).
"""

import dagster as dg

# Cheap: recompute when a parent updates (per partition for day-partitioned assets).
EAGER = dg.AutomationCondition.eager()

# After training: follow the model assets only, not the data inputs they share with training.
DATA_INPUTS = dg.AssetSelection.groups("raw", "validation", "media", "graph", "features")
AFTER_MODEL = dg.AutomationCondition.eager().ignore(DATA_INPUTS)
