//! configdrive (in progress)
