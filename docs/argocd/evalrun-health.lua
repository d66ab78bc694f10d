-- Argo CD health check for eval.lmms.dev/EvalRun (resource.customizations.health).
-- A run is Progressing until the operator has observed its latest spec and while it
-- waits, is scheduled or evaluates; Healthy when it Succeeded; Degraded when it Failed;
-- Suspended while spec.suspend holds it or after spec.cancel stopped it.
local hs = {}
local status = obj.status
if status == nil or status.observedGeneration == nil
    or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local phase = status.phase or ""
local detail = status.message or ""
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Succeeded"
  if status.results ~= nil then
    local parts = {}
    for _, r in ipairs(status.results) do
      table.insert(parts, r.task .. " " .. r.metric .. "=" .. tostring(r.value))
    end
    if #parts > 0 then
      hs.message = "Succeeded: " .. table.concat(parts, ", ")
    end
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (status.reason or "Failed") .. ": " .. detail
elseif phase == "Cancelled" or status.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = (status.reason or phase) .. ": " .. detail
else
  hs.status = "Progressing"
  local summary = status.summary
  if summary ~= nil and summary ~= "" then
    hs.message = phase .. " " .. summary .. ": " .. detail
  else
    hs.message = phase .. " (" .. (status.reason or "") .. "): " .. detail
  end
end
return hs
