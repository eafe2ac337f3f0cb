"""Drawing and the notebook explorer (what to draw is computed in :mod:`gcsemb.explore`).

- Plots: :mod:`~gcsemb.view.viz` (the UMAP scatter, ``plot_projection``) from
  :mod:`~gcsemb.view.plot_content` and :mod:`~gcsemb.view.layout`; :mod:`~gcsemb.view.grid`
  (result grids); :mod:`~gcsemb.view.thumbnails` (fetched and cached).
- The explorer: :mod:`~gcsemb.view.explorer` (its state and actions, no widget),
  :mod:`~gcsemb.view.widgets` (``Explorer``; its widgets built in
  :mod:`~gcsemb.view.explorer_controls`), the map (:mod:`~gcsemb.view.map_points`,
  :mod:`~gcsemb.view.map_picture`, :mod:`~gcsemb.view.map_gestures`) and
  :mod:`~gcsemb.view.widget_display` (widgets in every frontend).
"""
