"""The app's helpers, beside ``pages/``: pure state logic (:mod:`ui.state`) and the Streamlit
glue shared by every page (:mod:`ui.common`). The library never imports this package."""
