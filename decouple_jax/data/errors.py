"""The one exception type of the data package."""


class DataError(Exception):
  """A data set that cannot be obtained or read.

  The message always names the problem and how to fix it, so launch scripts can print it as is
  instead of a traceback.
  """
