"""Stage orchestration: experiment tracking, events, the recipe runner."""
