-- Argo CD health check for eval.lmms.dev/Leaderboard: Healthy once it holds entries,
-- Degraded when its object-store copy failed, else Progressing (no entry yet).
local hs = {}
local status = obj.status or {}
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "ObjectStoreSynced" and c.status == "False" then
      hs.status = "Degraded"
      hs.message = c.message or "the object-store copy failed"
      return hs
    end
  end
end
if (status.entries or 0) > 0 then
  hs.status = "Healthy"
  hs.message = tostring(status.entries) .. " entries, " .. tostring(status.models or 0) .. " models"
else
  hs.status = "Progressing"
  hs.message = "No entries yet"
end
return hs
