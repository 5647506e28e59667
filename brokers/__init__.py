"""Transport: optical alerts in (Avro files, Confluent wire format), match reports out.

Modules: ``rubin_schemas`` (the lsst-alert-packet schema registry by schema id),
``alert_decoding`` (one packet -> :class:`mmcross.model.alert.AlertBatch` rows),
``alert_files`` (files and directories of packets -> batches), ``reports`` (match report
Avro/JSON Lines) and ``voevent_out`` (counterpart and retraction VOEvents).
"""
