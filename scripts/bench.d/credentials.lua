-- wrk: a different single-use credential on every request. Each of the
-- GATE402_THREADS threads takes every GATE402_THREADS-th line of the file
-- GATE402_CREDENTIALS, starting at its own offset.
local threads = 0
function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

local creds = {}
local next_index
local step
function init(args)
  for line in io.lines(os.getenv("GATE402_CREDENTIALS")) do creds[#creds + 1] = line end
  step = tonumber(os.getenv("GATE402_THREADS"))
  next_index = offset + 1
end

function request()
  local credential = creds[next_index] or "Payment exhausted"
  next_index = next_index + step
  return wrk.format("GET", nil, { ["Authorization"] = credential })
end
