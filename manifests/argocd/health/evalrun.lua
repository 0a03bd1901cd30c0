-- Argo CD health check for proctor.dev/EvalRun (key
-- resource.customizations.health.proctor.dev_EvalRun in argocd-cm).
-- Argo CD sets the global `obj` and takes the returned table {status, message}.
-- Only Lua 5.1 features (Argo CD runs gopher-lua); tested with lua5.4.
-- Mapping (docs/operations.md#argo-cd-health):
--   no status or an unobserved generation    -> Progressing
--   phase Failed / condition Failed=True       -> Degraded
--   phase Cancelled                            -> Degraded (ended before a decision)
--   phase Succeeded, decision reject           -> Degraded (the candidate failed its gate)
--   phase Succeeded                            -> Healthy
--   phase Suspended / condition Suspended=True -> Suspended
--   condition Stalled=True                     -> Degraded
--   Degraded=True while Progressing=False      -> Degraded (missing Secret, impossible plan)
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
  hs.message = "Waiting for the operator to observe the run"
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
  hs.message = describe(condition(status, "Failed"), "Run failed")
  return hs
end
if phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = describe(condition(status, "Cancelled"), "Run cancelled")
  return hs
end
if phase == "Succeeded" then
  local result = status.result or {}
  if result.decision == "reject" then
    hs.status = "Degraded"
    hs.message = "Candidate rejected: " .. (result.reason or "see status.result")
    return hs
  end
  -- The operator puts the why (cases evaluated, early stop) on Ready; Succeeded has the reason.
  local done = condition(status, "Succeeded")
  if done == nil or (done.message or "") == "" then
    done = condition(status, "Ready") or done
  end
  hs.status = "Healthy"
  hs.message = describe(done, "Run succeeded")
  if result.decision ~= nil then
    hs.message = hs.message .. "; decision " .. result.decision
  end
  return hs
end
if phase == "Suspended" or is_true(status, "Suspended") then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend is true); workers removed"
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
  hs.message = describe(condition(status, "Degraded"), "Run cannot proceed")
  return hs
end
if phase == "Pending" or phase == "Running" then
  local workers = status.workers or {}
  hs.status = "Progressing"
  hs.message = phase .. ": " .. string.format("%.1f", tonumber(status.progressPercent) or 0)
    .. "% done, " .. int(workers.ready) .. "/" .. int(workers.desired) .. " workers ready"
  return hs
end
hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
