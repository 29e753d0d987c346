"""Every generated dataset: the demo's digits (``digits.py``, drawn by ``paint.py``), the benches'
photo-like JPEGs and their COCO and Open Images layouts (``photos.py``), and the one COCO-layout
writer that the demo, the benches and the tests share (``coco_layout.py``)."""
