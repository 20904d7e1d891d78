"""What `bigmodel serve` (serve.py: its options, the server's lifecycle) is made of.

- models.py    a run or export folder loaded for a runtime (tf, onnx, tflite): a function of the input arrays
- requests.py  TF Serving's request formats read into those arrays; BadRequest, a 4xx naming the field
- versions.py  which versions of a base stay loaded (TF Serving's version policies: latest, latest:N, all, 1,3)
- window.py    the last rows predicted, compared with the train split's statistics (drift in /metrics)
- http.py      the Starlette app (TF Serving's REST routes), its limits under overload, the bearer-token check
"""
