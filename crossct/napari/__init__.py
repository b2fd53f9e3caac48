"""CrossCT in napari: a dock widget that segments the selected image layer, and the demo images
as sample data.  Installed with ``pip install 'crossct[napari]'``; napari finds it through the
``napari.manifest`` entry point (``napari.yaml`` here).

Qt and napari are imported only by the widget module; :mod:`crossct.napari.settings` and
:mod:`crossct.napari.run` (what the widget offers and what its worker thread does) work without them.
"""
