-- Argo CD health check of hearth.dev/v1alpha1 KnowledgeBase.
-- argocd-cm key: resource.customizations.health.hearth.dev_KnowledgeBase (see argocd-cm.yaml).
-- Healthy:     Ready=True for the current spec (status.observedGeneration == metadata.generation).
-- Degraded:    Stalled=True: the operator needs a change to the spec or the cluster.
-- Progressing: anything else, including no status yet and a spec the operator has not seen.

-- What the last ingestion indexed, when reported: " (12 documents, 340 chunks)".
local function summary(status)
  if status.documents == nil or status.chunks == nil then
    return ""
  end
  return " (" .. tostring(status.documents) .. " documents, " .. tostring(status.chunks) .. " chunks)"
end

local hs = {}

local function find(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function says(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local ready = find(status.conditions, "Ready")
local generation = obj.metadata.generation
local observed = status.observedGeneration
if observed == nil and ready ~= nil then
  observed = ready.observedGeneration
end
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = find(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled, "Stalled")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready, "Ready") .. summary(status)
  return hs
end

local reconciling = find(status.conditions, "Reconciling")
hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = says(reconciling, "Reconciling")
else
  hs.message = says(ready, "Waiting for the Ready condition")
end
return hs
