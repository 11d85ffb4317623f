-- wrk: a different single-use credential on every request. Each thread
-- takes every THREADS-th line of the file, starting at its own offset.
local threads = 0
function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

local creds = {}
local next_index
local step
function init(args)
  for line in io.lines(args[1]) do creds[#creds + 1] = line end
  step = tonumber(args[2])
  next_index = offset + 1
end

function request()
  local credential = creds[next_index] or "Payment exhausted"
  next_index = next_index + step
  return wrk.format("GET", nil, { ["Authorization"] = credential })
end
