"""Page scripts of the explorer (run by `st.navigation`, never imported): render only.

Named `views`, not `pages`: a `pages/` folder beside the main script switches Streamlit into its legacy
multipage mode, where a deep link such as /compare runs the page without `app.py` (no layout, no navigation).
"""
