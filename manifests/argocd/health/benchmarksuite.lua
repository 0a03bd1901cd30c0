-- Argo CD health check for proctor.dev/BenchmarkSuite (key
-- resource.customizations.health.proctor.dev_BenchmarkSuite in argocd-cm).
-- Argo CD sets the global `obj` and takes the returned table {status, message}.
-- Only Lua 5.1 features (Argo CD runs gopher-lua); tested with lua5.4.
-- Mapping (docs/operations.md#argo-cd-health):
--   no status or an unobserved generation    -> Progressing
--   phase Failed / condition Failed=True       -> Degraded
--   phase Cancelled                            -> Degraded (ended before every cell ran)
--   phase Succeeded with regressions           -> Degraded (slower than the baseline)
--   phase Succeeded                            -> Healthy
--   phase Suspended / condition Suspended=True -> Suspended
--   condition Stalled=True                     -> Degraded
--   Degraded=True while Progressing=False      -> Degraded
--   phase Pending or Running                   -> Progressing
local hs = {}

local function condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(status, ctype)
  local c = condition(status, ctype)
  return c ~= nil and c.status == "True"
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

local function int(x)
  return string.format("%d", math.floor((tonumber(x) or 0) + 0.5))
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the suite"
  return hs
end
if generation ~= nil and status.observedGeneration ~= nil
    and tonumber(status.observedGeneration) < tonumber(generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. int(generation)
  return hs
end

local phase = status.phase
if phase == "Failed" or is_true(status, "Failed") then
  hs.status = "Degraded"
  hs.message = describe(condition(status, "Failed"), "Suite failed")
  return hs
end
if phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = describe(condition(status, "Cancelled"), "Suite cancelled")
  return hs
end
if phase == "Succeeded" then
  local regressions = status.regressions or {}
  local count = tonumber(status.regressionCount) or #regressions
  if count > 0 then
    local names = {}
    for i, r in ipairs(regressions) do
      if i > 3 then
        names[#names + 1] = "..."
        break
      end
      names[#names + 1] = tostring(r.benchmark) .. "/" .. tostring(r.variant)
        .. " x" .. string.format("%.2f", tonumber(r.ratio) or 0)
    end
    hs.status = "Degraded"
    hs.message = int(count) .. " regression(s) against the baseline"
    if #names > 0 then
      hs.message = hs.message .. ": " .. table.concat(names, ", ")
    end
    return hs
  end
  hs.status = "Healthy"
  hs.message = describe(condition(status, "Succeeded"), "Suite succeeded")
  return hs
end
if phase == "Suspended" or is_true(status, "Suspended") then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend is true)"
  return hs
end
if is_true(status, "Stalled") then
  hs.status = "Degraded"
  hs.message = describe(condition(status, "Stalled"), "No progress")
  return hs
end
local progressing = condition(status, "Progressing")
if is_true(status, "Degraded") and progressing ~= nil and progressing.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(condition(status, "Degraded"), "Suite cannot proceed")
  return hs
end
if phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  hs.message = phase .. ": "
    .. string.format("%.1f", tonumber(status.progressPercent) or 0) .. "% of repetitions done"
  return hs
end
hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
