"""The Streamlit explorer (`embedx dashboard`), shipped inside the package so an installed embedx runs it."""
