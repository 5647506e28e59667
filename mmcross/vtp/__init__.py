"""The VOEvent Transport Protocol (VTP, IVOA VOEvent Transport 2.0), once for every role.

Shaped like Comet's ``comet/protocol/``: one base, one role per module, each role with its
own timeouts as class constants; applications plug in through small protocols (as Comet's
``icomet`` interfaces). This floor imports :mod:`mmcross.model` only.

* :mod:`~mmcross.vtp.base` — framing (bounded, exact-length), close handling
  (:class:`~mmcross.vtp.base.ConnectionClosedError`), safe XML parsing and the ``Transport``
  messages (iamalive, ack, nak);
* :mod:`~mmcross.vtp.subscriber` — connects to brokers, answers iamalive, acks each VOEvent
  and hands it to a :class:`~mmcross.vtp.subscriber.VOEventHandler`; reconnects with
  back-off; used by the GCN Classic listener (``listeners/vtp.py``) and ``mmcross subscribe``
  (``mmcross/app/observe.py``);
* :mod:`~mmcross.vtp.receiver` — accepts submissions, validated by a
  :class:`~mmcross.vtp.receiver.SubmissionHandler`, acks or naks with a reason, size and rate
  limits; used by the partner receiver (``listeners/vtp_receiver.py``);
* :mod:`~mmcross.vtp.broadcaster` — serves subscribers: iamalive every 60 s, ack/nak
  handling, a bounded queue per subscriber, per-subscriber
  :class:`~mmcross.vtp.broadcaster.SubscriberFilter`; used by the counterpart sink
  (``brokers/vtp.py``).
"""
